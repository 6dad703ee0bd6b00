"""Controller settings: one frozen value built from flags, validated at start."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


class SettingsError(ValueError):
    """Invalid configuration; the message names the setting."""


@dataclass(frozen=True)
class HAProxySettings:
    name: str = "haproxy"
    runtime_sockets: tuple[str, ...] = ()
    master_socket: str | None = None
    config_path: Path | None = None
    base_config_path: Path | None = None


@dataclass(frozen=True)
class AwsSettings:
    name: str = "aws"
    region: str | None = None
    rate: float = 10.0  # API calls per second (token bucket per provider and region)
    poll_period: float = 1.0  # seconds between target-health reads of a pool with pending gates


@dataclass(frozen=True)
class AlibabaSettings:
    name: str = "alibaba"
    region: str | None = None
    rate: float = 10.0  # API calls per second (token bucket per provider and region)
    poll_period: float = 1.0  # seconds between health reads of a pool with pending gates
    #: host[:port] or http(s)://host[:port]; None: the SDK's public endpoint for the region
    clb_endpoint: str | None = None
    nlb_endpoint: str | None = None
    ecs_endpoint: str | None = None


@dataclass(frozen=True)
class ControllerSettings:
    kubeconfig: str | None = None
    default_provider: str = "haproxy"
    haproxy: tuple[HAProxySettings, ...] = ()
    aws: tuple[AwsSettings, ...] = ()
    alibaba: tuple[AlibabaSettings, ...] = ()
    lb_cidr: str | None = None
    continuous: bool = False
    workers: int = 4
    poll_period: float = 0.1
    resync_period: float = 300.0
    # webhook
    webhook_port: int = 9443
    webhook_bind: str = "127.0.0.1"
    webhook_url: str | None = None  # registered by URL (sandbox, out-of-cluster)
    webhook_service: str | None = None  # NAMESPACE/NAME of the Service in front of the webhook
    webhook_cert_dir: Path | None = None
    webhook_cert_file: Path | None = None
    webhook_key_file: Path | None = None
    webhook_config_name: str = "podgate"
    inject: bool = True
    remove_gate_prefixes: tuple[str, ...] = ()
    adopt_gate_prefixes: tuple[str, ...] = ()
    skip_label_value: str = "disabled"
    prestop_delay: float = 0.0
    leader_elect: bool = False
    leader_election_namespace: str = "kube-system"
    leader_election_name: str = "podgate-controller"
    identity: str = "podgate"
    lease_duration: float = 15.0
    extra: dict[str, str] = field(default_factory=dict)

    def validate(self) -> None:
        names = [h.name for h in self.haproxy] + [a.name for a in self.aws] + [a.name for a in self.alibaba]
        if len(set(names)) != len(names):
            raise SettingsError("--haproxy-name: provider names must be unique")
        if not names:
            raise SettingsError(
                "no load balancer configured: give --haproxy-runtime-socket, --aws-provider "
                "and/or --alibaba-provider"
            )
        for a in self.alibaba:
            if not a.region:
                raise SettingsError("--alibaba-region is required with --alibaba-provider")
            for flag, url in (("clb", a.clb_endpoint), ("nlb", a.nlb_endpoint), ("ecs", a.ecs_endpoint)):
                if url and "://" in url and not url.startswith(("http://", "https://")):
                    raise SettingsError(f"--alibaba-{flag}-endpoint={url!r} is not http(s)://HOST[:PORT]")
            if a.rate <= 0:
                raise SettingsError("--alibaba-rate must be positive")
        for flag, cloud in [("aws", a) for a in self.aws] + [("alibaba", a) for a in self.alibaba]:
            if not 0.01 <= cloud.poll_period <= 60:
                raise SettingsError(f"--{flag}-poll-period must be between 0.01 and 60 seconds")
        if self.default_provider not in names:
            raise SettingsError(f"--default-provider={self.default_provider!r} is not a configured provider")
        for h in self.haproxy:
            if not h.runtime_sockets:
                raise SettingsError(f"--haproxy-runtime-socket: provider {h.name!r} needs at least one")
            if (h.master_socket is None) != (h.config_path is None):
                raise SettingsError(
                    "--haproxy-master-socket and --haproxy-config go together (provisioning mode)"
                )
            if h.master_socket and not self.lb_cidr:
                raise SettingsError("--lb-cidr is required when HAProxy provisions load balancers")
        if not 0.01 <= self.poll_period <= 5:
            raise SettingsError("--poll-period must be between 0.01 and 5 seconds")
        if not 0 <= self.prestop_delay <= 3600:
            raise SettingsError("--prestop-delay must be between 0 and 3600 seconds")
        if not 3 <= self.lease_duration <= 300:
            raise SettingsError("--lease-duration must be between 3 and 300 seconds")
        if self.workers < 1:
            raise SettingsError("--workers must be at least 1")
        if (self.webhook_cert_file is None) != (self.webhook_key_file is None):
            raise SettingsError("--webhook-cert-file and --webhook-key-file go together")
        if self.webhook_url and self.webhook_service:
            raise SettingsError("--webhook-url and --webhook-service are alternatives; give one")

"""Controller settings: one frozen value built from flags, environment and config file, validated at
start (podgate.cli.controller_cmd declares how each is given)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from podgate.model import gates
from podgate.model.lb import default_classes


class SettingsError(ValueError):
    """Invalid configuration; the message names the setting."""


@dataclass(frozen=True)
class HAProxySettings:
    name: str = "haproxy"
    runtime_sockets: tuple[str, ...] = ()
    master_socket: str | None = None
    config_path: Path | None = None
    base_config_path: Path | None = None
    #: an HA pair with a member unreachable: "all" (pending gates wait) or "reachable"
    ha_policy: str = "all"


@dataclass(frozen=True)
class AwsSettings:
    name: str = "aws"
    region: str | None = None
    rate: float = 10.0  # API calls per second (one token bucket per account and region)
    poll_period: float = 1.0  # seconds between target-health reads of a pool with pending gates


@dataclass(frozen=True)
class AlibabaSettings:
    name: str = "alibaba"
    region: str | None = None
    rate: float = 10.0  # API calls per second (one token bucket per account and region)
    poll_period: float = 1.0  # seconds between health reads of a pool with pending gates
    #: host[:port] or http(s)://host[:port]; None: the SDK's public endpoint for the region
    clb_endpoint: str | None = None
    nlb_endpoint: str | None = None
    ecs_endpoint: str | None = None


@dataclass(frozen=True)
class ControllerSettings:
    kubeconfig: str | None = None
    #: this cluster's name in the cloud groups' ownership tags (``podgate.dev/cluster``);
    #: required with a cloud provider
    cluster_name: str | None = None
    #: provider for class-less ``type: LoadBalancer`` Services; None: podgate leaves them alone
    default_provider: str | None = None
    haproxy: tuple[HAProxySettings, ...] = ()
    aws: tuple[AwsSettings, ...] = ()
    alibaba: tuple[AlibabaSettings, ...] = ()
    lb_cidr: str | None = None
    continuous: bool = False
    #: seconds a gate may wait for the load balancer after ContainersReady; None: for ever
    readiness_timeout: float | None = None
    on_timeout: str = "closed"  # open | closed: the gate when the timeout passes
    workers: int = 4
    poll_period: float = 0.1
    resync_period: float = 300.0
    # webhook
    webhook_port: int = 9443
    webhook_bind: str = "0.0.0.0"
    webhook_url: str | None = None  # registered by URL (sandbox, out-of-cluster)
    webhook_service: str | None = None  # NAMESPACE/NAME of the Service in front of the webhook
    webhook_cert_dir: Path = Path("/tmp/podgate-webhook-certs")
    webhook_cert_file: Path | None = None
    webhook_key_file: Path | None = None
    webhook_config_name: str = "podgate"
    #: the controller's own namespace: the shared webhook certificate Secret is there
    namespace: str = "podgate-system"
    webhook_cert_secret: str = "podgate-webhook-certs"
    webhook_cert_validity: float = 365 * 86400.0
    webhook_ca_validity: float = 10 * 365 * 86400.0
    webhook_cert_renew_at: float = 0.67
    webhook_cert_check_period: float = 10.0
    #: where admission reviews are answered: "thread" (in the controller's process, sharing its
    #: interpreter lock) or "process" (one of the controller's own, with its own watches of
    #: Services, ReadinessChecks and grants: the webhook's own latency a quarter lower, about
    #: 150 MiB more memory; bench/results/scale-process.md)
    admission: str = "thread"
    inject: bool = True
    remove_gate_prefixes: tuple[str, ...] = ()
    adopt_gate_prefixes: tuple[str, ...] = ()
    skip_label_value: str = "disabled"
    #: the preStop hook for load-balanced pods without one (``--prestop``); None: not given
    prestop: gates.PreStop | None = None
    #: the older ``--prestop-delay`` (N seconds: ``sleep N``; 0: ``none``); None: not given
    prestop_delay: float | None = None
    #: ``http(s)://HOST:PORT`` where the kubelet reaches the drain endpoint; None: derived from
    #: --webhook-service's ClusterIP, if any
    drain_url: str | None = None
    #: the plain-HTTP health port (/healthz, /readyz, /metrics)
    health_port: int = 8081
    health_bind: str = "0.0.0.0"
    #: the longest one pod's eviction is refused (seconds): then it goes through, with a Warning
    max_eviction_refusal: float = 600.0
    #: the drain endpoint's own plain-HTTP port (the kubelets call it: open to the nodes only)
    drain_port: int = 8082
    drain_bind: str = "0.0.0.0"
    leader_elect: bool = False
    leader_election_namespace: str = "kube-system"
    leader_election_name: str = "podgate-controller"
    identity: str = "podgate"
    lease_duration: float = 15.0
    #: ``CLASS=PROVIDER`` pairs: the loadBalancerClasses podgate serves; () = podgate.dev/<provider>
    load_balancer_classes: tuple[str, ...] = ()
    #: the webhook also honours the AWS and Alibaba controllers' namespace opt-in labels
    migration_labels: bool = False
    #: the URL prefixes or HOST:PORTs ReadinessCheck ``prometheus.url`` may name; () = none
    prometheus_allow: tuple[str, ...] = ()

    def classes(self) -> dict[str, str]:
        """loadBalancerClass → provider name."""
        if not self.load_balancer_classes:
            return default_classes(self.provider_names())
        return {c: p for c, _, p in (pair.partition("=") for pair in self.load_balancer_classes)}

    def prestop_default(self) -> gates.PreStop:
        """The hook pods get unless their annotation says otherwise: ``--prestop``, else the
        older ``--prestop-delay``, else ``drain``."""
        if self.prestop is not None:
            return self.prestop
        if self.prestop_delay is not None:
            return gates.prestop_delay_as_prestop(self.prestop_delay)
        return gates.DRAIN

    def provider_names(self) -> list[str]:
        return [h.name for h in self.haproxy] + [a.name for a in self.aws] + [a.name for a in self.alibaba]

    def validate(self) -> None:
        """Check how settings relate to one another.  Each setting's own range and form is
        checked where it is declared (podgate.cli.controller_cmd.SETTINGS), whatever gives it."""
        names = self.provider_names()
        if len(set(names)) != len(names):
            raise SettingsError("--haproxy-name: provider names must be unique")
        if not names:
            raise SettingsError(
                "no load balancer configured: give --haproxy-runtime-socket, --aws-provider "
                "and/or --alibaba-provider"
            )
        if (self.aws or self.alibaba) and not self.cluster_name:
            raise SettingsError(
                "--cluster-name is required with --aws-provider or --alibaba-provider: a group is "
                "bound only when its podgate.dev/cluster tag names this cluster"
            )
        for a in self.alibaba:
            if not a.region:
                raise SettingsError("--alibaba-region is required with --alibaba-provider")
        if self.default_provider is not None and self.default_provider not in names:
            raise SettingsError(
                f"--default-provider={self.default_provider!r} is not a configured provider; "
                f"configured: {', '.join(names)}"
            )
        for pair in self.load_balancer_classes:
            provider = pair.partition("=")[2]
            if provider not in names:
                raise SettingsError(
                    f"--load-balancer-class={pair!r}: {provider!r} is not a configured provider; "
                    f"configured: {', '.join(names)}"
                )
        for h in self.haproxy:
            if (h.master_socket is None) != (h.config_path is None):
                raise SettingsError(
                    "--haproxy-master-socket and --haproxy-config go together (provisioning mode)"
                )
            if h.master_socket and not self.lb_cidr:
                raise SettingsError("--lb-cidr is required when HAProxy provisions load balancers")
        if (self.webhook_cert_file is None) != (self.webhook_key_file is None):
            raise SettingsError("--webhook-cert-file and --webhook-key-file go together")
        if self.webhook_ca_validity < self.webhook_cert_validity:
            raise SettingsError("--webhook-ca-validity must be at least --webhook-cert-validity")
        if (
            self.webhook_cert_validity * (1 - self.webhook_cert_renew_at)
            < 12 * self.webhook_cert_check_period
        ):
            raise SettingsError(
                "--webhook-cert-validity after --webhook-cert-renew-at must leave 12 "
                "--webhook-cert-check-period for a rotation to reach every replica"
            )
        if self.webhook_url and self.webhook_service:
            raise SettingsError("--webhook-url and --webhook-service are alternatives; give one")
        listeners = {"--webhook-port": self.webhook_port, "--health-port": self.health_port}
        for flag, port in listeners.items():
            if port and port == self.drain_port:
                raise SettingsError(
                    f"--drain-port and {flag} must differ (the drain hook has a port of its own)"
                )
        if self.prestop is not None and self.prestop_delay is not None:
            raise SettingsError("--prestop and --prestop-delay (its older form) are alternatives; give one")

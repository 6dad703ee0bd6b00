"""The Alibaba Cloud provider (CLB vServer groups, NLB server groups), split by product:
``transport`` (the SDK's clients, the retry loop, paging), ``clb``, ``nlb``, ``ecs`` (a pod
IP's ENI), ``mapping`` (the cloud's answers → podgate's view, pure) and ``provider`` (the seam)."""

from podgate.providers.alibaba.provider import AlibabaProvider

__all__ = ["AlibabaProvider"]

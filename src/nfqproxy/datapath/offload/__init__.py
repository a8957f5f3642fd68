"""The offload data path: userspace decides each flow's first packet, kernel conntrack NAT carries the rest."""  # noqa: E501

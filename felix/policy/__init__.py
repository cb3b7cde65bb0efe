"""Network policy for felix: the pure calculation (selectors, tiers, profiles, ip sets) and its contract.

`messages` is the vocabulary the calculation sends to the iptables/ipset dataplane (`felix.dataplane`).
"""

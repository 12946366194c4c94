"""The traffic lab: readers and attackers from many loopback addresses against the origin, nginx
and Kalkan side by side, measuring what readers get during an attack (see bench/lab/README.md).
"""

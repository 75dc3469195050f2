"""Real processes that the tests and the benchmarks start — neither imports the other; not part
of the product.

`waits`: free loopback ports and bounded waits (a condition, a listening port, an answering
URL). `redis_cluster`: Redis Cluster and Sentinel setups built from the product's own
single-server launcher, `retrieve_cli.redis_server.RedisServer` (dev mode's Redis, which the
tests and benchmarks use directly for one server). `processes`: stopping a started process
group. `cpu`: CPU time of processes (Linux /proc).
"""

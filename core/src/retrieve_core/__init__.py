"""Code shared by the operator, the receiver, the worker and the CLI.

The CRD spec models, the job format, the Redis key layout and the webhook log store live here
and nowhere else.
"""

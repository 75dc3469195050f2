"""The webhook receiver: whitelist, integration lookup, size, signature, parse, enqueue.

Entry points: `init_app` (public port), `init_admin_app` (admin port), `run_receiver` (serve
both until cancelled) and `ReceiverSettings`.
"""

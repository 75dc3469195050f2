"""Scheduled polls of an Integration's source (`spec.schedule`), in one package.

- `cron`: five-field cron expressions, as CronJobs read them (also validates the spec).
- `state`: what each run remembers per integration (a Redis hash).
- `source_poll`: one run (`retrieve poll`): fetch the source, enqueue the items webhooks missed.

The operator's side is `retrieve_operator.schedule_cronjobs` (the `<integration>-poll` CronJobs)
and `retrieve_operator.schedule_status` (the Integration status of the runs); the command is
`retrieve_cli.poll_cmd`, and `retrieve dev` runs the schedules itself.
"""

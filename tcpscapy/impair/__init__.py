"""Path impairment on the routed lab's router: a user-space forwarding process (NFQUEUE with
delayed verdicts) that delays, drops, reorders, duplicates, rate-limits and CE-marks.

    model.py    the pure decision model: parameters, parsing, one direction's pipeline
    daemon.py   the process on the router: queues, timer heap, control socket
    control.py  start / stop / talk to that process from the lab (RoutedLab.path)
"""

"""Flow control (feature gate `flowControl`): priority bands, fairness, ordering, capacity, TTL, dispatch.

Also home of admission (`epp.flowcontrol.admission`): the legacy shed-sheddable-when-saturated check used
when flow control is off, and the queueing admission used when it is on.
"""

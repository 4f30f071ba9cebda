"""The web console (console/README.md): one page at /console where a learner watches the whole sandbox move —
instances and their health, calls and event flows, breakers, faults, queues, traces — and breaks it live."""

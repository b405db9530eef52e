"""The production topology of docker/compose/docker-compose.prod.yml on this machine's loopback.

``python -m deploy.local up`` starts it for a person to try, ``python -m deploy.local down``
removes it; tests/deploy/test_ha.py starts it through :class:`deploy.local.stack.Stack` and breaks
it. Every program reads the shipped file from docker/, rendered with a small substitution table
(deploy/local/render.py): only hosts, ports, paths and memory sizes differ.
"""

from deploy.local.stack import Stack, StackError

__all__ = ["Stack", "StackError"]

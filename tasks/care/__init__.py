"""The care loop: playbook, task lists with control groups, uplift."""

"""The Pulumi components that deploy cvmfs-ephemeral (see docs/deploy.md)."""

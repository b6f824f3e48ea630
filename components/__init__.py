"""The Pulumi components that deploy cvmfs-ephemeral (see README.md, "Deploying cvmfs-ephemeral with Pulumi")."""

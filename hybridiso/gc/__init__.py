"""gc: what hybridiso can remove safely. finders look for candidates (environments, branches, leftovers, firewall rules), rules decides what each one is, merged proves a branch landed by content."""

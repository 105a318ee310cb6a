"""Tools for a team: published recipes as presets, and the pull-request report."""

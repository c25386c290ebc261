"""Privacy accounting and disclosure control; never imports `federation`."""

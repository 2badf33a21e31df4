"""ab_gate: promote a challenger only when it is clearly and safely better than the champion."""

"""The inference level: trained runs back from their workdirs, and generating from them."""

"""Plain-Python reference implementations the jitted kernel is tested against."""

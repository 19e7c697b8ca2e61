"""NCSNv2 (Song & Ermon, 2020) as discrete VE models."""

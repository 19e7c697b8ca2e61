"""NCSN (Song & Ermon, 2019) with and without the NCSNv2 techniques, as discrete VE models."""

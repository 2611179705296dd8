"""Loading, validating and building EndpointPickerConfig documents."""

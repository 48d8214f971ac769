// placeholder: filled in by the holds screens

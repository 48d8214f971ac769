// placeholder: filled in by the officer screens

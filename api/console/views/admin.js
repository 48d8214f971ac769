// placeholder: filled in by the admin screens

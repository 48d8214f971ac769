// placeholder: filled in by the auditor screens

// placeholder: filled in by the approver screens

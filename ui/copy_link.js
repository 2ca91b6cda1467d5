(link) => {
  // Best effort: the clipboard needs a secure context (https or localhost). The link is also shown in
  // its textbox, to copy by hand where this fails.
  if (link && navigator.clipboard) navigator.clipboard.writeText(link).catch(() => {});
  return [];
}

"""Who gets through: client tracking, policy rules, decisions and challenges."""

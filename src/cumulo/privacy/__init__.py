"""Privacy compliance (GDPR/CCPA): data subjects, export and erasure by crypto-shredding,
consent, retention and PII redaction. See docs/privacy.md."""

//! The TOTP core: codes, verification window, replay, lockout. No HTTP, no clock.

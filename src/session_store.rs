//! Session records on PostgreSQL: the actors' `SessionStore` port.

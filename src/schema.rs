//! diesel table definitions for the tables the stores query through the DSL.

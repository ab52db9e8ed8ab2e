//! composefs-dump(5): parser (strict and lenient) and printer.

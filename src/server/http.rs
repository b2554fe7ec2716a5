//! Health probe and metrics over HTTP (in progress).

//! The gRPC subscription API (in progress).

"""Ray wiring: one module per job, each exposing `main(argv) -> int`. No domain logic here."""

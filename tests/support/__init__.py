"""Helpers the tests share (no tests here): DICOM and bad-input factories, the fuzzer's mutations,
a fault-injecting proxy, subprocess `unet` runs, Ray heads on loopback, SEG checks, bundles."""

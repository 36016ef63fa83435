// The CLI, and so its tests, run on Linux only (process groups, parent-death signal, /proc).
[assembly: System.Runtime.Versioning.SupportedOSPlatform("linux")]

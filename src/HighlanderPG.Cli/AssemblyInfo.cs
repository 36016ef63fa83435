// highlander relies on Linux process groups, prctl's parent-death signal (through util-linux setpriv) and /proc.
[assembly: System.Runtime.Versioning.SupportedOSPlatform("linux")]

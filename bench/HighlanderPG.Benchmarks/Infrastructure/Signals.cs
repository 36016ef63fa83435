using System.Runtime.InteropServices;

namespace HighlanderPG.Benchmarks.Infrastructure;

/// <summary>POSIX signals to a process by id (.NET's <c>Process.Kill()</c> only sends SIGKILL).</summary>
internal static partial class Signals
{
    public const int SigKill = 9;
    public const int SigTerm = 15;

    /// <summary>Sends <paramref name="signal"/> to <paramref name="pid"/>; false if there is no such process.</summary>
    public static bool Send(int pid, int signal) => Kill(pid, signal) == 0;

    [LibraryImport("libc", EntryPoint = "kill", SetLastError = true)]
    private static partial int Kill(int pid, int signal);
}

using System.Runtime.InteropServices;

namespace HighlanderPG.TestKit.Processes;

/// <summary>POSIX signals to a node process (what an orchestrator or a crash does to it).</summary>
public static class Signals
{
    /// <summary>SIGTERM: the polite stop (what <c>docker stop</c> or systemd sends).</summary>
    public const int Term = 15;

    /// <summary>SIGKILL: the process dies at once, nothing of it runs any more.</summary>
    public const int Kill = 9;

    /// <summary>SIGSTOP: the process is frozen (a long GC pause, a frozen VM or container) until <see cref="Continue"/> (Linux's number).</summary>
    public const int Stop = 19;

    /// <summary>SIGCONT: a frozen process runs again (Linux's number).</summary>
    public const int Continue = 18;

    /// <summary>Sends <paramref name="signal"/> to the process <paramref name="pid"/>.</summary>
    /// <exception cref="InvalidOperationException">kill(2) failed.</exception>
    public static void Send(int pid, int signal)
    {
        if (NativeMethods.kill(pid, signal) != 0)
        {
            throw new InvalidOperationException($"kill({pid}, {signal}) failed: errno {Marshal.GetLastPInvokeError()}");
        }
    }

    private static class NativeMethods
    {
        [DllImport("libc", SetLastError = true)]
        [DefaultDllImportSearchPaths(DllImportSearchPath.SafeDirectories)]
#pragma warning disable SYSLIB1054 // LibraryImport would need AllowUnsafeBlocks for no gain here.
        internal static extern int kill(int pid, int signal);
#pragma warning restore SYSLIB1054
    }
}

using System.Diagnostics;
using System.Runtime.InteropServices;

namespace HighlanderPG.Cli.Processes;

/// <summary>The few libc calls .NET has no API for: signalling a whole process group.</summary>
internal static partial class Native
{
    public const int SigKill = 9;
    public const int SigTerm = 15;
    public const int SigQuit = 3;
    public const int SigInt = 2;
    private const int Esrch = 3;
    private const int PrSetChildSubreaper = 36;
    private const int WNoHang = 1;

    /// <summary>Sends <paramref name="signal"/> to every process in group <paramref name="processGroup"/>; false when the group is empty.</summary>
    public static bool SignalGroup(int processGroup, int signal)
    {
        ArgumentOutOfRangeException.ThrowIfLessThanOrEqual(processGroup, 1);
        return Kill(-processGroup, signal) == 0;
    }

    /// <summary>
    /// Sends <paramref name="signal"/> to the process group that <paramref name="leader"/> (started by <c>highlander</c>
    /// through <c>setpriv</c> and <c>setsid</c>) leads; when that group does not exist yet, to the process itself: in the
    /// first moments after its start the process has not called <c>setsid</c> yet (it is still <c>setpriv</c> or
    /// <c>setsid</c> on its way to the command), so a signal to its group alone would be lost, and a stop would wait out
    /// the whole stop budget before its SIGKILL. A process that has exited is left alone (its pid may be reused once
    /// reaped). False when neither was signalled.
    /// </summary>
    public static bool SignalGroupOrLeader(Process leader, int signal)
    {
        ArgumentNullException.ThrowIfNull(leader);
        try
        {
            var pid = leader.Id;
            if (SignalGroup(pid, signal))
            {
                return true;
            }

            return Marshal.GetLastPInvokeError() == Esrch && !leader.HasExited && SignalProcess(pid, signal);
        }
        catch (InvalidOperationException)
        {
            return false; // disposed: it has exited
        }
    }

    /// <summary>Sends <paramref name="signal"/> to one process; false when it does not exist.</summary>
    public static bool SignalProcess(int pid, int signal)
    {
        ArgumentOutOfRangeException.ThrowIfLessThanOrEqual(pid, 1);
        return Kill(pid, signal) == 0;
    }

    /// <summary>
    /// Whether a live process is left in group <paramref name="processGroup"/>. Zombies do not count: a killed grandchild is
    /// reaped by whoever adopts it (PID 1 or a subreaper), maybe late, and a zombie runs nothing. Signal 0 answers "nobody at
    /// all" cheaply; otherwise the members are looked up in /proc.
    /// </summary>
    public static bool GroupExists(int processGroup)
    {
        if (Kill(-processGroup, 0) != 0 && Marshal.GetLastPInvokeError() == Esrch)
        {
            return false;
        }

        foreach (var directory in Directory.EnumerateDirectories("/proc"))
        {
            var name = Path.GetFileName(directory);
            if (name.Length == 0 || !char.IsAsciiDigit(name[0]))
            {
                continue;
            }

            if (ReadStat(directory) is { } stat && stat.Group == processGroup && stat.State is not ('Z' or 'X'))
            {
                return true;
            }
        }

        return false;
    }

    /// <summary>
    /// Makes this process a child subreaper (prctl(2), <c>PR_SET_CHILD_SUBREAPER</c>): a descendant whose parent dies
    /// (a daemon's double fork, a <c>setsid</c> child of a shell that exited) is re-parented to this process instead of
    /// PID 1, so it can still be found and stopped. False when the kernel refuses (before Linux 3.4).
    /// </summary>
    public static bool BecomeChildSubreaper() => Prctl(PrSetChildSubreaper, 1, 0, 0, 0) == 0;

    /// <summary>
    /// Every live process whose parent is <paramref name="parent"/>, and (transitively) their descendants: a map of
    /// pid to parent pid read from <c>/proc</c>. Zombies are left out (they run nothing).
    /// </summary>
    public static IReadOnlyList<int> ChildrenOf(int parent, Func<int, bool> include)
    {
        var parents = new Dictionary<int, int>();
        foreach (var directory in Directory.EnumerateDirectories("/proc"))
        {
            var name = Path.GetFileName(directory);
            if (name.Length == 0 || !char.IsAsciiDigit(name[0]) || !int.TryParse(name, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var pid))
            {
                continue;
            }

            if (ReadStatFull(directory) is { } stat && stat.State is not ('Z' or 'X'))
            {
                parents[pid] = stat.Parent;
            }
        }

        var result = new List<int>();
        var frontier = new Queue<int>(parents.Where(p => p.Value == parent && include(p.Key)).Select(p => p.Key));
        while (frontier.Count > 0)
        {
            var pid = frontier.Dequeue();
            result.Add(pid);
            foreach (var child in parents.Where(p => p.Value == pid).Select(p => p.Key))
            {
                frontier.Enqueue(child);
            }
        }

        return result;
    }

    /// <summary>
    /// Whether this process ignores <paramref name="signal"/> (<c>SigIgn</c> in <c>/proc/self/status</c>): inherited from
    /// whoever started it (a shell ignores SIGINT and SIGQUIT for a command it runs in the background); the runtime then
    /// installs no handler for it, and a registration never hears it.
    /// </summary>
    public static bool SignalIgnored(int signal)
    {
        try
        {
            return SignalIgnoredIn(File.ReadAllText("/proc/self/status"), signal) ?? true;
        }
        catch (IOException)
        {
            return true; // unknown: as good as ignored (the caller skips what depends on it)
        }
    }

    /// <summary>Whether <paramref name="status"/> (a <c>/proc/PID/status</c>) says <paramref name="signal"/> is ignored; <see langword="null"/> when it does not say.</summary>
    internal static bool? SignalIgnoredIn(string status, int signal)
    {
        foreach (var line in status.Split('\n'))
        {
            if (line.StartsWith("SigIgn:", StringComparison.Ordinal)
                && ulong.TryParse(line.AsSpan(7).Trim(), System.Globalization.NumberStyles.HexNumber, System.Globalization.CultureInfo.InvariantCulture, out var mask))
            {
                return (mask & (1UL << (signal - 1))) != 0;
            }
        }

        return null;
    }

    /// <summary>
    /// The children of this process's main thread (zombies too), from <c>/proc/self/task/PID/children</c>: one small read
    /// instead of every process's <c>stat</c>. Every process re-parented to this process (a child subreaper) is among
    /// them: the kernel gives an orphan to the first live thread of its reaper, and that is the main thread, which lives as
    /// long as the process (children this process started itself are listed under the thread that started them).
    /// <see langword="null"/> when the kernel does not offer these files (built without <c>CONFIG_PROC_CHILDREN</c>).
    /// </summary>
    public static List<int>? MainThreadChildren()
    {
        string text;
        try
        {
            // Checked first: an exception (and its first-time code) on the way from SIGTERM to the release costs more.
            if (!File.Exists(MainThreadChildrenPath))
            {
                return null;
            }

            text = File.ReadAllText(MainThreadChildrenPath);
        }
        catch (IOException)
        {
            return null;
        }

        var children = new List<int>();
        foreach (var part in text.Split(' ', StringSplitOptions.RemoveEmptyEntries))
        {
            if (int.TryParse(part, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var pid))
            {
                children.Add(pid);
            }
        }

        return children;
    }

    private static readonly string MainThreadChildrenPath = $"/proc/self/task/{Environment.ProcessId}/children";

    /// <summary>The value of variable <paramref name="name"/> in process <paramref name="pid"/>'s initial environment, or <see langword="null"/>.</summary>
    public static string? EnvironmentOf(int pid, string name)
    {
        try
        {
            var prefix = name + "=";
            foreach (var entry in File.ReadAllText($"/proc/{pid}/environ").Split('\0'))
            {
                if (entry.StartsWith(prefix, StringComparison.Ordinal))
                {
                    return entry[prefix.Length..];
                }
            }
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
        }

        return null;
    }

    /// <summary>
    /// Reaps the exited children of this process that <paramref name="adopted"/> says are adopted orphans (re-parented to
    /// this child subreaper): .NET reaps only the processes it started, and a zombie is never reaped otherwise.
    /// </summary>
    public static void ReapAdopted(Func<int, bool> adopted)
    {
        var self = Environment.ProcessId;
        foreach (var directory in Directory.EnumerateDirectories("/proc"))
        {
            var name = Path.GetFileName(directory);
            if (name.Length > 0 && char.IsAsciiDigit(name[0])
                && int.TryParse(name, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var pid)
                && ReadStatFull(directory) is { State: 'Z', Parent: var parent } && parent == self && adopted(pid))
            {
                _ = WaitPid(pid, out _, WNoHang);
            }
        }
    }

    /// <summary>Whether process <paramref name="pid"/> exists and is not a zombie.</summary>
    public static bool ProcessAlive(int pid) => ReadStat($"/proc/{pid}") is { State: not ('Z' or 'X') };

    /// <summary>
    /// When process <paramref name="pid"/> started (clock ticks since boot, field 22 of <c>/proc/PID/stat</c>): with the pid,
    /// it identifies a process across pid reuse. <see langword="null"/> when it is gone.
    /// </summary>
    public static long? StartTime(int pid)
    {
        try
        {
            var stat = File.ReadAllText($"/proc/{pid}/stat");
            var fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
            return fields.Length > 19 && long.TryParse(fields[19], System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var ticks) ? ticks : null;
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            return null;
        }
    }

    /// <summary>The state and process group of a process, from <c>/proc/PID/stat</c>; <see langword="null"/> when it is gone.</summary>
    private static (char State, int Group)? ReadStat(string processDirectory)
    {
        try
        {
            // "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses, so read after the last ')'.
            var stat = File.ReadAllText(Path.Combine(processDirectory, "stat"));
            var fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ', 4);
            return fields.Length >= 3 && int.TryParse(fields[2], System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var group)
                ? (fields[0][0], group)
                : null;
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            return null;
        }
    }

    private static (char State, int Parent)? ReadStatFull(string processDirectory)
    {
        try
        {
            var stat = File.ReadAllText(Path.Combine(processDirectory, "stat"));
            var fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ', 4);
            return fields.Length >= 3 && int.TryParse(fields[1], System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var parent)
                ? (fields[0][0], parent)
                : null;
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            return null;
        }
    }

    /// <summary>
    /// Gives every thread of this process the lowest CPU priority (nice 19; on Linux a nice value is per thread, and threads
    /// started later inherit their creator's). A thread started during a pass by one not lowered yet would keep the
    /// normal priority (seen in a trace: the thread pool adding a worker in that instant, which then ran the rest of the
    /// shutdown at full priority beside the new leader's command), so passes repeat until one finds no thread it has not
    /// seen (at most a few). Returns how many threads were changed.
    /// </summary>
    public static int LowerOwnPriority()
    {
        var changed = 0;
        var seen = new HashSet<int>();
        for (var pass = 0; pass < MaxLoweringPasses; pass++)
        {
            var found = false;
            foreach (var directory in Directory.EnumerateDirectories("/proc/self/task"))
            {
                if (!int.TryParse(Path.GetFileName(directory), System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var tid) || !seen.Add(tid))
                {
                    continue;
                }

                found = true;
                if (Lower(tid))
                {
                    changed++;
                }
            }

            if (!found)
            {
                break;
            }
        }

        return changed;
    }

    /// <summary>
    /// Gives the lowest CPU priority (nice 19) to this process's threads whose name starts with <paramref name="prefix"/>
    /// and whose id is not in <paramref name="done"/> yet (each is added to it; ids of threads gone are dropped from it):
    /// the runtime's background compiler, for one (<see cref="RuntimeCompilerThreadName"/>). Returns how many were changed.
    /// </summary>
    public static int LowerThreadsNamed(string prefix, HashSet<int> done)
    {
        ArgumentNullException.ThrowIfNull(done);
        var changed = 0;
        var alive = new HashSet<int>();
        try
        {
            foreach (var directory in Directory.EnumerateDirectories("/proc/self/task"))
            {
                if (!int.TryParse(Path.GetFileName(directory), System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var tid))
                {
                    continue;
                }

                alive.Add(tid);
                if (done.Contains(tid))
                {
                    continue;
                }

                try
                {
                    if (File.ReadAllText(Path.Combine(directory, "comm")).StartsWith(prefix, StringComparison.Ordinal) && Lower(tid))
                    {
                        done.Add(tid);
                        changed++;
                    }
                }
                catch (IOException)
                {
                    // the thread ended meanwhile
                }
            }
        }
        catch (IOException)
        {
            // /proc unreadable: nothing lowered
        }

        done.IntersectWith(alive);
        return changed;
    }

    /// <summary>The start of the name of the runtime's background (tier-1) compiler's thread, as Linux keeps it (15 characters at most).</summary>
    public const string RuntimeCompilerThreadName = ".NET Tiered Com";

    /// <summary>Creates a FIFO at <paramref name="path"/>, readable and writable by this user only; 0 on success.</summary>
    public static int MakeFifo(string path) => MkFifo(path, 0x180); // 0600

    /// <summary>
    /// Opens the FIFO at <paramref name="path"/> for reading and writing, without blocking (Linux opens a FIFO so at once,
    /// with or without a reader; close-on-exec): held by this process, it lets a reader open the FIFO at any time
    /// (a writer exists) and keeps what is written to it until read. The descriptor, or -1.
    /// </summary>
    public static int OpenFifoHeld(string path) => Open(path, ORdWr | ONonBlock | OCloExec);

    /// <summary>Writes all of <paramref name="text"/> to descriptor <paramref name="fd"/>; true when all of it was written.</summary>
    public static bool WriteAll(int fd, string text)
    {
        var bytes = System.Text.Encoding.UTF8.GetBytes(text);
        return Write(fd, bytes, bytes.Length) == bytes.Length;
    }

    /// <summary>Closes descriptor <paramref name="fd"/>.</summary>
    public static void CloseDescriptor(int fd) => _ = Close(fd);

    private const int ORdWr = 0x2;
    private const int ONonBlock = 0x800;
    private const int OCloExec = 0x80000;

    [LibraryImport("libc", EntryPoint = "mkfifo", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int MkFifo(string path, uint mode);

    [LibraryImport("libc", EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int Open(string path, int flags);

    [LibraryImport("libc", EntryPoint = "write", SetLastError = true)]
    private static partial nint Write(int fd, byte[] buffer, nint count);

    [LibraryImport("libc", EntryPoint = "close", SetLastError = true)]
    private static partial int Close(int fd);

    private const int PrioProcess = 0;
    private const int LowestPriority = 19;
    private const int SchedIdle = 5;

    /// <summary>
    /// Thread <paramref name="tid"/> at nice 19 and under the <c>SCHED_IDLE</c> policy: a thread of normal priority that
    /// wakes takes the core from it at once (a nice-19 thread, under the kernel's EEVDF scheduler, keeps the core for the
    /// rest of its time slice, up to a few milliseconds: traced, beside a take-over). True when either took.
    /// </summary>
    private static bool Lower(int tid)
    {
        var niced = SetPriority(PrioProcess, tid, LowestPriority) == 0;
        var param = 0;
        return SchedSetScheduler(tid, SchedIdle, ref param) == 0 || niced;
    }

    [LibraryImport("libc", EntryPoint = "sched_setscheduler", SetLastError = true)]
    private static partial int SchedSetScheduler(int pid, int policy, ref int param);

    /// <summary>The calling thread's id in the kernel (its <c>/proc/self/task</c> entry).</summary>
    public static int CurrentThreadId() => GetTid();

    [LibraryImport("libc", EntryPoint = "gettid")]
    private static partial int GetTid();

    [LibraryImport("libc", EntryPoint = "setpriority", SetLastError = true)]
    private static partial int SetPriority(int which, int who, int priority);

    private const int MaxLoweringPasses = 5;

    [LibraryImport("libc", EntryPoint = "prctl", SetLastError = true)]
    private static partial int Prctl(int option, nuint arg2, nuint arg3, nuint arg4, nuint arg5);

    [LibraryImport("libc", EntryPoint = "waitpid", SetLastError = true)]
    private static partial int WaitPid(int pid, out int status, int options);

    [LibraryImport("libc", EntryPoint = "kill", SetLastError = true)]
    private static partial int Kill(int pid, int signal);
}

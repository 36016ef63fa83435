using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;

namespace HighlanderPG.Cli.Processes;

/// <summary>What to start: a program, its arguments and environment changes.</summary>
internal sealed record LaunchSpec(string FileName, IReadOnlyList<string> Arguments)
{
    /// <summary>Variables to set (a <see langword="null"/> value removes the variable).</summary>
    public IReadOnlyDictionary<string, string?> Environment { get; init; } = new Dictionary<string, string?>();

    /// <summary>Capture standard output and error (the demo's nodes); otherwise all three streams are inherited.</summary>
    public bool RedirectOutput { get; init; }

    /// <summary>The directory it starts in (<see langword="null"/>: this process's).</summary>
    public string? WorkingDirectory { get; init; }
}

/// <summary>
/// Starts the processes that must not outlive <c>highlander</c>: a run's command, the demo's nodes.
/// </summary>
/// <remarks>
/// <para>
/// Each process is started as <c>setpriv --pdeathsig KILL -- setsid -- PROGRAM ARGS</c> (util-linux): it gets its own
/// session and process group (its pid is its group id), so stopping it can signal everything it started, and the
/// kernel sends it SIGKILL if <c>highlander</c> dies, even by SIGKILL. <c>setpriv</c> and <c>setsid</c> exec in place:
/// the pid seen here is the program's own.
/// </para>
/// <para>
/// The parent-death signal is tied to the <em>thread</em> that forked, not the process (prctl(2), PR_SET_PDEATHSIG): a
/// thread-pool thread that retires would kill the child. So every process is forked from one dedicated thread that
/// lives as long as the process.
/// </para>
/// <para>
/// The parent-death signal reaches only the program itself, not what it started (a shell script's own children). So a
/// watchdog, a tiny <c>sh</c> in its own session, holds a pipe from this process and the list of live process groups;
/// when this process dies its end of the pipe closes, and the watchdog SIGKILLs every group still listed.
/// </para>
/// </remarks>
internal sealed class ProcessLauncher
{
    /// <summary>
    /// The watchdog: reads "+PGID:STARTTIME" and "-PGID" lines; at end of input, SIGKILLs each group still listed, unless
    /// its id now belongs to another process (pids are reused: the leader's start time, field 22 of /proc/PID/stat, must
    /// match). A leader that is gone with members left is still ours: a group id is not reused while it has members. A
    /// leader that has no group yet (highlander died in the instant after starting it, before its <c>setsid</c>) is
    /// SIGKILLed itself.
    /// </summary>
    internal const string WatchdogScript = """
        exec >/dev/null 2>&1
        trap '' INT TERM HUP QUIT
        groups=
        while IFS= read -r line; do
          case $line in
            +*) groups="$groups ${line#+}" ;;
            -*) keep=; for g in $groups; do [ "${g%%:*}" = "${line#-}" ] || keep="$keep $g"; done; groups=$keep ;;
          esac
        done
        for g in $groups; do
          pgid=${g%%:*}; start=${g#*:}
          if [ -r "/proc/$pgid/stat" ]; then
            IFS= read -r s < "/proc/$pgid/stat" || continue
            s=${s##*) }
            set -- $s
            [ "${20}" = "$start" ] || continue
          fi
          kill -KILL -"$pgid" || kill -KILL "$pgid"
        done
        """;

    private static readonly Lazy<ProcessLauncher> SharedInstance = new(() => new ProcessLauncher(), LazyThreadSafetyMode.ExecutionAndPublication);
    private readonly BlockingCollection<Action> _work = [];
    private readonly ConcurrentDictionary<int, bool> _started = new();
    private readonly Lock _watchdogGate = new();
    private StreamWriter? _watchdog;
    private bool _watchdogBroken;

    private ProcessLauncher()
    {
        var thread = new Thread(() =>
        {
            foreach (var item in _work.GetConsumingEnumerable())
            {
                item();
            }
        })
        {
            IsBackground = true,
            Name = "highlander process launcher",
        };
        thread.Start();
    }

    /// <summary>The process's launcher: one thread, one watchdog.</summary>
    public static ProcessLauncher Shared => SharedInstance.Value;

    /// <summary>Says what is missing to start processes safely, or <see langword="null"/> when all is there.</summary>
    public static string? MissingPrerequisite()
    {
        if (!OperatingSystem.IsLinux())
        {
            return "highlander runs commands on Linux only (it needs process groups and a parent-death signal)";
        }

        foreach (var program in new[] { "setpriv", "setsid", "sh" })
        {
            if (FindProgram(program) is null)
            {
                return $"'{program}' was not found on PATH; it comes with util-linux (Debian/Ubuntu: apt-get install util-linux), which highlander needs to give the command its own process group and a parent-death signal";
            }
        }

        return null;
    }

    /// <summary>
    /// Finds <paramref name="name"/> like <c>execvp</c> would: a name with a slash as a path, otherwise on <c>PATH</c>.
    /// Returns the executable's path, or <see langword="null"/>.
    /// </summary>
    public static string? FindProgram(string name)
    {
        ArgumentNullException.ThrowIfNull(name);
        if (name.Length == 0)
        {
            return null;
        }

        if (name.Contains('/', StringComparison.Ordinal))
        {
            return IsExecutable(name) ? name : null;
        }

        var path = Environment.GetEnvironmentVariable("PATH") ?? "/usr/local/bin:/usr/bin:/bin";
        foreach (var directory in path.Split(':', StringSplitOptions.RemoveEmptyEntries))
        {
            var candidate = Path.Combine(directory, name);
            if (IsExecutable(candidate))
            {
                return candidate;
            }
        }

        return null;
    }

    /// <summary>Starts <paramref name="spec"/> in its own session and process group, with a parent-death signal, watched by the watchdog.</summary>
    public Task<Process> StartAsync(LaunchSpec spec)
    {
        ArgumentNullException.ThrowIfNull(spec);
        var done = new TaskCompletionSource<Process>(TaskCreationOptions.RunContinuationsAsynchronously);
        _work.Add(() =>
        {
            try
            {
                EnsureWatchdog();
                var process = Start(spec);
                _started[process.Id] = true;
                Watch(process.Id);
                done.SetResult(process);
            }
            catch (Exception ex)
            {
                done.SetException(ex);
            }
        });
        return done.Task;
    }

    /// <summary>
    /// The script of a launch prepared ahead (<see cref="PrepareAsync"/>): it waits for one line on the FIFO given as its
    /// first argument (the fencing token, or an empty line), exports it as <c>HIGHLANDER_FENCING_TOKEN</c> when not empty,
    /// and becomes the program (the rest of its arguments) by <c>exec</c>: same pid, process group, session and
    /// parent-death signal. Without a line (the FIFO closed empty) it exits 125 without running anything.
    /// </summary>
    internal const string PreparedScript = """
        IFS= read -r token < "$1" || exit 125
        shift
        [ -z "$token" ] || export HIGHLANDER_FENCING_TOKEN="$token"
        exec "$@"
        """;

    /// <summary>
    /// Starts <paramref name="spec"/>'s process ahead, as <see cref="StartAsync"/> would (own session and group, parent-death
    /// signal, watched by the watchdog), but as a <c>sh</c> that waits on a FIFO before it becomes the program
    /// (<see cref="PreparedScript"/>): <see cref="PreparedLaunch.TryGo"/> then costs a write and one <c>exec</c> instead of
    /// starting <c>setpriv</c>, <c>setsid</c> and the program. <paramref name="spec"/>'s environment must not depend on
    /// the run (the fencing token goes through the FIFO).
    /// </summary>
    public Task<PreparedLaunch> PrepareAsync(LaunchSpec spec, string shell)
    {
        ArgumentNullException.ThrowIfNull(spec);
        RemoveStalePrepareDirectories();
        var directory = Directory.CreateTempSubdirectory(PrepareDirectoryPrefix + Environment.ProcessId.ToString(CultureInfo.InvariantCulture) + "-");
        var fifo = Path.Combine(directory.FullName, "go");
        // Held open here (read and write) from the start: the shell's open of the FIFO never waits for a writer, and the
        // token written at the take-over waits in the FIFO until the shell reads it, however soon after the start that is.
        var held = Native.MakeFifo(fifo) == 0 ? Native.OpenFifoHeld(fifo) : -1;
        if (held < 0)
        {
            directory.Delete(recursive: true);
            return Task.FromException<PreparedLaunch>(new IOException($"could not create the FIFO {fifo}"));
        }

        var prepared = spec with { FileName = shell, Arguments = ["-c", PreparedScript, "highlander", fifo, spec.FileName, .. spec.Arguments] };
        var done = new TaskCompletionSource<PreparedLaunch>(TaskCreationOptions.RunContinuationsAsynchronously);
        _work.Add(() =>
        {
            try
            {
                EnsureWatchdog();
                var process = Start(prepared);
                _started[process.Id] = true;
                Watch(process.Id);
                done.SetResult(new PreparedLaunch(this, process, directory.FullName, held));
            }
            catch (Exception ex)
            {
                Native.CloseDescriptor(held);
                directory.Delete(recursive: true);
                done.SetException(ex);
            }
        });
        return done.Task;
    }

    private const string PrepareDirectoryPrefix = "highlander-prepared-";
    private int _staleRemoved;

    /// <summary>
    /// Once per process: removes the FIFO directories that a <c>highlander</c> killed before it could clean up left behind
    /// (named after its pid; a directory whose pid runs is left alone).
    /// </summary>
    private void RemoveStalePrepareDirectories()
    {
        if (Interlocked.Exchange(ref _staleRemoved, 1) == 1)
        {
            return;
        }

        try
        {
            foreach (var directory in Directory.EnumerateDirectories(Path.GetTempPath(), PrepareDirectoryPrefix + "*"))
            {
                var rest = Path.GetFileName(directory)[PrepareDirectoryPrefix.Length..];
                var dash = rest.IndexOf('-', StringComparison.Ordinal);
                if (dash > 0 && int.TryParse(rest[..dash], NumberStyles.None, CultureInfo.InvariantCulture, out var pid) && pid != Environment.ProcessId && !Native.ProcessAlive(pid))
                {
                    Directory.Delete(directory, recursive: true);
                }
            }
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            // Only tidying: another user's, or gone meanwhile.
        }
    }

    /// <summary>
    /// Starts the watchdog now (it is started with the first process otherwise), so that the first launch of a command
    /// does not pay for it: that launch is on the path from acquiring a lock to the command running.
    /// </summary>
    public Task WarmUpAsync()
    {
        var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        _work.Add(() =>
        {
            try
            {
                EnsureWatchdog();
                done.SetResult();
            }
            catch (Exception ex)
            {
                done.SetException(ex);
            }
        });
        return done.Task;
    }

    /// <summary>
    /// Whether <paramref name="pid"/> is a process this launcher started (a command, a member, a demo node, the watchdog),
    /// as opposed to a descendant that was re-parented to this process because it is a child subreaper.
    /// </summary>
    public bool Started(int pid) => _started.ContainsKey(pid);

    /// <summary>Tells the watchdog that group <paramref name="processGroup"/> is done with (so a reused id is never killed).</summary>
    public void Forget(int processGroup) => TellWatchdog("-" + processGroup.ToString(CultureInfo.InvariantCulture));

    private void Watch(int processGroup)
    {
        // No start time: the process has already exited (and been reaped); whatever it left is stopped by its owner.
        if (Native.StartTime(processGroup) is { } startTime)
        {
            TellWatchdog("+" + processGroup.ToString(CultureInfo.InvariantCulture) + ":" + startTime.ToString(CultureInfo.InvariantCulture));
        }
    }

    private static Process Start(LaunchSpec spec)
    {
        var startInfo = new ProcessStartInfo(FindProgram("setpriv") ?? "setpriv")
        {
            UseShellExecute = false,
            RedirectStandardOutput = spec.RedirectOutput,
            RedirectStandardError = spec.RedirectOutput,
            WorkingDirectory = spec.WorkingDirectory ?? "",
        };
        foreach (var argument in (string[])["--pdeathsig", "KILL", "--", FindProgram("setsid") ?? "setsid", "--", spec.FileName, .. spec.Arguments])
        {
            startInfo.ArgumentList.Add(argument);
        }

        foreach (var (name, value) in spec.Environment)
        {
            if (value is null)
            {
                startInfo.Environment.Remove(name);
            }
            else
            {
                startInfo.Environment[name] = value;
            }
        }

        return Process.Start(startInfo) ?? throw new InvalidOperationException($"Could not start {spec.FileName}.");
    }

    private void EnsureWatchdog()
    {
        lock (_watchdogGate)
        {
            if (_watchdog is not null || _watchdogBroken)
            {
                return;
            }

            var startInfo = new ProcessStartInfo(FindProgram("setsid") ?? "setsid")
            {
                UseShellExecute = false,
                RedirectStandardInput = true,
            };
            foreach (var argument in (string[])["--", FindProgram("sh") ?? "/bin/sh", "-c", WatchdogScript])
            {
                startInfo.ArgumentList.Add(argument);
            }

            var process = Process.Start(startInfo) ?? throw new InvalidOperationException("Could not start the watchdog shell.");
            _started[process.Id] = true;
            _watchdog = process.StandardInput;
            _watchdog.AutoFlush = true;
        }
    }

    private void TellWatchdog(string line)
    {
        lock (_watchdogGate)
        {
            if (_watchdog is null)
            {
                return;
            }

            try
            {
                _watchdog.Write(line + "\n");
            }
            catch (IOException)
            {
                // Someone killed the watchdog: commands still get the parent-death signal, their children no longer do.
                _watchdogBroken = true;
                _watchdog = null;
                Console.Error.WriteLine("highlander: warning: the watchdog process is gone; if highlander is killed, processes started by the command may survive it");
            }
        }
    }

    private static bool IsExecutable(string path)
    {
        try
        {
            return File.Exists(path)
                && (File.GetUnixFileMode(path) & (UnixFileMode.UserExecute | UnixFileMode.GroupExecute | UnixFileMode.OtherExecute)) != 0;
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            return false;
        }
    }
}

/// <summary>
/// A process started ahead (<see cref="ProcessLauncher.PrepareAsync"/>) that waits on its FIFO to become the command.
/// </summary>
internal sealed class PreparedLaunch(ProcessLauncher launcher, Process process, string directory, int fifo)
{
    private int _released;

    /// <summary>The process (once it has become the program, the program's: <c>exec</c> keeps the pid).</summary>
    public Process Process { get; } = process;

    /// <summary>
    /// Tells it to become the program, with <paramref name="fencingToken"/> (written to its FIFO, where it waits until
    /// the shell reads it, even if the shell is still starting); false when it cannot (it has exited): it is then to be
    /// <see cref="Discard"/>ed. Once it has run, <see cref="Release"/> it.
    /// </summary>
    public bool TryGo(string? fencingToken) =>
        Volatile.Read(ref _released) == 0 && !Process.HasExited && Native.WriteAll(fifo, (fencingToken ?? "") + "\n");

    /// <summary>
    /// Gives up what was kept for the hand-over (the FIFO and its private directory), once the process has exited: until
    /// then, the shell may still be on its way to reading the token.
    /// </summary>
    public void Release()
    {
        if (Interlocked.Exchange(ref _released, 1) == 0)
        {
            Native.CloseDescriptor(fifo);
            DeleteDirectory();
        }
    }

    /// <summary>
    /// Ends it unused: SIGKILL to it and its group (before <c>setsid</c> it has no group of its own yet; it ran nothing
    /// but its own shell), waits for it, forgets it.
    /// </summary>
    public void Discard()
    {
        try
        {
            if (!Process.HasExited)
            {
                Native.SignalProcess(Process.Id, Native.SigKill);
                Native.SignalGroup(Process.Id, Native.SigKill);
                Process.WaitForExit(TimeSpan.FromSeconds(2));
            }
        }
        catch (InvalidOperationException)
        {
        }

        launcher.Forget(Process.Id);
        Process.Dispose();
        Release();
    }

    private void DeleteDirectory()
    {
        try
        {
            Directory.Delete(directory, recursive: true);
        }
        catch (IOException)
        {
        }
        catch (UnauthorizedAccessException)
        {
        }
    }
}

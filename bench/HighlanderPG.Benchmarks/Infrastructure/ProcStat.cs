using System.Globalization;

namespace HighlanderPG.Benchmarks.Infrastructure;

/// <summary>
/// CPU time and memory of processes of this machine from <c>/proc</c> (Linux): <c>/proc/PID/stat</c> fields 14-17
/// (utime, stime, cutime, cstime, in clock ticks of <see cref="TicksPerSecond"/>) and <c>VmRSS</c> of
/// <c>/proc/PID/status</c>. The server's processes are read the same way, so the server must run on this machine.
/// </summary>
internal static class ProcStat
{
    /// <summary>USER_HZ: 100 on every Linux architecture .NET runs on (<c>getconf CLK_TCK</c>).</summary>
    public const double TicksPerSecond = 100;

    /// <summary>CPU milliseconds used by <paramref name="pid"/> so far (user + system), or null if it is gone.</summary>
    public static double? CpuMilliseconds(int pid, bool withReapedChildren = false)
    {
        var fields = StatFields(pid);
        if (fields is null)
        {
            return null;
        }

        // After "pid (comm)", field 3 (state) is index 0: utime (14) is index 11, stime 12, cutime 13, cstime 14.
        var ticks = long.Parse(fields[11], CultureInfo.InvariantCulture) + long.Parse(fields[12], CultureInfo.InvariantCulture);
        if (withReapedChildren)
        {
            ticks += long.Parse(fields[13], CultureInfo.InvariantCulture) + long.Parse(fields[14], CultureInfo.InvariantCulture);
        }

        return ticks * 1000 / TicksPerSecond;
    }

    /// <summary>Resident memory of <paramref name="pid"/> in MiB, or null if it is gone.</summary>
    public static double? RssMiB(int pid)
    {
        try
        {
            foreach (var line in File.ReadLines($"/proc/{pid}/status"))
            {
                if (line.StartsWith("VmRSS:", StringComparison.Ordinal))
                {
                    var kib = long.Parse(line["VmRSS:".Length..].Trim().Split(' ')[0], CultureInfo.InvariantCulture);
                    return kib / 1024.0;
                }
            }
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
        }

        return null;
    }

    /// <summary>The parent process id of <paramref name="pid"/>, or null if it is gone.</summary>
    public static int? ParentOf(int pid)
    {
        var fields = StatFields(pid);
        return fields is null ? null : int.Parse(fields[1], CultureInfo.InvariantCulture);
    }

    /// <summary>
    /// CPU milliseconds of a server: the postmaster <paramref name="postmasterPid"/> with its reaped children (backends
    /// that have exited) plus every live child (backends, background workers).
    /// </summary>
    public static double? ServerCpuMilliseconds(int postmasterPid)
    {
        var total = CpuMilliseconds(postmasterPid, withReapedChildren: true);
        if (total is null)
        {
            return null;
        }

        foreach (var directory in Directory.EnumerateDirectories("/proc"))
        {
            if (int.TryParse(Path.GetFileName(directory), NumberStyles.None, CultureInfo.InvariantCulture, out var pid) &&
                pid != postmasterPid && ParentOf(pid) == postmasterPid && CpuMilliseconds(pid) is { } child)
            {
                total += child;
            }
        }

        return total;
    }

    private static string[]? StatFields(int pid)
    {
        try
        {
            var text = File.ReadAllText($"/proc/{pid}/stat");
            var close = text.LastIndexOf(')');
            return text[(close + 2)..].Split(' ');
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            return null;
        }
    }
}

namespace HighlanderPG.Testing;

/// <summary>Finds system programs (<c>ip</c>, <c>iptables</c>) that may live outside a non-root <c>PATH</c>.</summary>
internal static class SystemPrograms
{
    private static readonly string[] SystemDirectories = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"];

    /// <summary>The full path of <paramref name="name"/>, or <see langword="null"/> if it is not installed.</summary>
    public static string? Find(string name)
    {
        foreach (var directory in SystemDirectories)
        {
            var candidate = Path.Combine(directory, name);
            if (File.Exists(candidate))
            {
                return candidate;
            }
        }

        var path = Environment.GetEnvironmentVariable("PATH");
        return string.IsNullOrEmpty(path)
            ? null
            : path.Split(Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries)
                .Select(directory => Path.Combine(directory, name))
                .FirstOrDefault(File.Exists);
    }

    /// <summary>The full path of iproute2's <c>ip</c>.</summary>
    /// <exception cref="InvalidOperationException"><c>ip</c> is not installed.</exception>
    public static string Ip() =>
        Find("ip") ?? throw new InvalidOperationException("The `ip` program (iproute2) was not found; install it (`apt-get install -y iproute2`).");

    /// <summary>The full path of <c>iptables</c>.</summary>
    /// <exception cref="InvalidOperationException"><c>iptables</c> is not installed.</exception>
    public static string Iptables() =>
        Find("iptables") ?? throw new InvalidOperationException("The `iptables` program was not found; install it (`apt-get install -y iptables`).");
}

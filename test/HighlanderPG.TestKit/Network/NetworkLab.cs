using System.Globalization;
using System.Net;
using System.Security.Cryptography;
using HighlanderPG.Testing;

namespace HighlanderPG.TestKit.Network;

/// <summary>
/// A network namespace of its own, joined to the current network namespace by veth links, whose links
/// can be cut with iptables <c>DROP</c> rules inside the namespace: a real TCP-level partition (no RST,
/// no FIN, nothing answers, not even the kernel's TCP stack on the far side). Dispose it to delete the
/// namespace and its links.
/// </summary>
/// <remarks>
/// <para>
/// Linux only, as root, with iproute2's <c>ip</c> and <c>iptables</c> installed; see
/// <see cref="IsSupported(out string)"/>. Put the program to cut off (for example a
/// <see cref="LocalPostgresServer"/>, through <see cref="LocalPostgresOptions.NetworkNamespace"/>) in the
/// namespace, and its clients in the current namespace, each client on its own link: then
/// <see cref="NetworkLink.PartitionAsync(CancellationToken)"/> cuts off one client and leaves the others.
/// </para>
/// <para>
/// Each lab has a random name (<c>"hl"</c> and 8 hexadecimal digits); link <c>i</c> is the veth pair
/// <c>{name}h{i}</c> (current namespace, <see cref="NetworkLink.HostAddress"/>) and <c>{name}n{i}</c> (in the
/// namespace, <see cref="NetworkLink.NamespaceAddress"/>). Each link gets a distinct <c>/30</c> from
/// <c>10.213.0.0/16</c> (never from <c>10.213.0.0/24</c>), chosen at random and checked against every IPv4
/// address of the current namespace, so parallel runs and leftovers of a crashed run do not collide. The
/// namespace's loopback is brought up.
/// </para>
/// <para>
/// Each link's <c>/30</c> also gets an <c>unreachable</c> route in the current namespace (metric 4213), added
/// before the link and kept until the process exits: the link's own route takes precedence while the link
/// exists, and once it is gone, a client still trying to reach the namespace's address (a leaked reconnect
/// loop) gets "no route to host" instead of sending packets out through the default route. The route is
/// also how concurrent labs reserve a <c>/30</c> atomically.
/// </para>
/// <para>
/// A lab that is never disposed is still deleted, best effort, when the process exits normally or
/// through an unhandled exception (not when it is killed). All members are thread-safe.
/// </para>
/// </remarks>
public sealed class NetworkLab : IAsyncDisposable
{
    /// <summary>The most links one lab can have.</summary>
    public const int MaxLinks = 32;

    private const string GuardRouteMetric = "4213";
    private static readonly TimeSpan CommandTimeout = TimeSpan.FromSeconds(30);
    private static readonly Lock RegistryGate = new();
    private static readonly HashSet<NetworkLab> LiveLabs = [];
    private static readonly List<string> GuardRoutes = [];
    private static bool s_processHandlersRegistered;

    private readonly string _ip;
    private readonly string _iptables;
    private readonly List<NetworkLink> _links = [];
    private readonly List<string> _hostInterfaces = [];
    private int _disposed;

    private NetworkLab(string namespaceName, string ip, string iptables)
    {
        NamespaceName = namespaceName;
        _ip = ip;
        _iptables = iptables;
    }

    /// <summary>
    /// The network namespace's name, as <c>ip netns list</c> shows it; pass it to
    /// <see cref="LocalPostgresOptions.NetworkNamespace"/> or run a program there with
    /// <c>ip netns exec {name} ...</c>.
    /// </summary>
    public string NamespaceName { get; }

    /// <summary>The links between the current namespace and <see cref="NamespaceName"/>, in creation order.</summary>
    public IReadOnlyList<NetworkLink> Links => _links.AsReadOnly();

    /// <summary>
    /// Options for a <see cref="LocalPostgresServer"/> that runs inside the network namespace
    /// <paramref name="namespaceName"/> and listens on <paramref name="listenAddresses"/> (the namespace sides of the
    /// links its clients use); clients here connect to the first of them that is not a loopback address or wildcard.
    /// Starting it needs root (<c>ip netns exec</c>); the options are checked when the server starts.
    /// </summary>
    /// <param name="namespaceName">The namespace (for example <see cref="NamespaceName"/>).</param>
    /// <param name="listenAddresses">The server's <c>listen_addresses</c>.</param>
    /// <returns>The options.</returns>
    public static LocalPostgresOptions ServerOptions(string namespaceName, string listenAddresses) =>
        new() { NetworkNamespace = namespaceName, ListenAddresses = listenAddresses };

    /// <summary>
    /// Starts a throwaway server inside this lab's namespace, listening on the namespace side of every one of
    /// <paramref name="links"/>; its <see cref="LocalPostgresServer.ConnectionString"/> goes over the first.
    /// </summary>
    /// <param name="links">The links its clients use.</param>
    /// <returns>The running server.</returns>
    public Task<LocalPostgresServer> StartServerAsync(params NetworkLink[] links) =>
        LocalPostgresServer.StartAsync(ServerOptions(NamespaceName, string.Join(',', links.Select(l => l.NamespaceAddress))));

    /// <summary>Whether <see cref="DisposeAsync"/> was called.</summary>
    internal bool IsDisposed => Volatile.Read(ref _disposed) != 0;

    /// <summary>
    /// Tells whether labs can be created here: Linux, running as root, with <c>ip</c> (iproute2) and
    /// <c>iptables</c> installed (looked up in <c>/usr/sbin</c>, <c>/sbin</c>, <c>/usr/bin</c>, <c>/bin</c>,
    /// then <c>PATH</c>). It does not create anything, so a kernel or container that refuses network
    /// namespaces is only found out by <see cref="CreateAsync(int, CancellationToken)"/>.
    /// </summary>
    /// <param name="reason">Why not, when it returns <see langword="false"/>; otherwise empty.</param>
    /// <returns>Whether <see cref="CreateAsync(int, CancellationToken)"/> can be expected to work.</returns>
    public static bool IsSupported(out string reason)
    {
        if (!OperatingSystem.IsLinux())
        {
            reason = "network namespaces, veth links and iptables need Linux";
            return false;
        }

        if (!LocalPostgresServer.IsRoot())
        {
            reason = "creating network namespaces, veth links and iptables rules needs root";
            return false;
        }

        if (SystemPrograms.Find("ip") is null)
        {
            reason = "the `ip` program (iproute2) is not installed (`apt-get install -y iproute2`)";
            return false;
        }

        if (SystemPrograms.Find("iptables") is null)
        {
            reason = "the `iptables` program is not installed (`apt-get install -y iptables`)";
            return false;
        }

        reason = string.Empty;
        return true;
    }

    /// <summary>
    /// Creates a network namespace with <paramref name="links"/> veth links to the current namespace, all up
    /// and passing traffic.
    /// </summary>
    /// <param name="links">The number of links, 1 to <see cref="MaxLinks"/>.</param>
    /// <param name="cancellationToken">Cancels the creation; what was created is then deleted.</param>
    /// <returns>The lab, ready for use.</returns>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="links"/> is out of range.</exception>
    /// <exception cref="InvalidOperationException">
    /// Labs are not supported here (see <see cref="IsSupported(out string)"/>), a command failed (the message
    /// has the command and its output), or no free <c>/30</c> was found.
    /// </exception>
    public static async Task<NetworkLab> CreateAsync(int links, CancellationToken cancellationToken = default)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(links, 1);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(links, MaxLinks);
        if (!IsSupported(out var reason))
        {
            throw new InvalidOperationException($"Cannot create a network lab: {reason}.");
        }

        var name = "hl" + Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(4));
        var lab = new NetworkLab(name, SystemPrograms.Ip(), SystemPrograms.Iptables());
        Register(lab);
        try
        {
            // Random names make leftovers unlikely; delete any by the same names anyway.
            await lab.RunAsync(lab._ip, ["netns", "del", name], check: false, cancellationToken).ConfigureAwait(false);
            for (var i = 0; i < links; i++)
            {
                await lab.RunAsync(lab._ip, ["link", "del", HostInterfaceName(name, i)], check: false, cancellationToken).ConfigureAwait(false);
            }

            await lab.RunAsync(lab._ip, ["netns", "add", name], check: true, cancellationToken).ConfigureAwait(false);
            await lab.RunAsync(lab._ip, ["-n", name, "link", "set", "lo", "up"], check: true, cancellationToken).ConfigureAwait(false);
            for (var i = 0; i < links; i++)
            {
                await lab.AddLinkAsync(i, cancellationToken).ConfigureAwait(false);
            }

            return lab;
        }
        catch
        {
            await lab.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    /// <summary>
    /// Deletes the host-side veth ends (which deletes their peers, and with them the iptables rules' effect)
    /// and the namespace. A program still running in the namespace keeps it alive, without links, until it
    /// ends. Best effort: never throws.
    /// </summary>
    /// <returns>A task that completes when the links and the namespace are deleted.</returns>
    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        string[] interfaces;
        lock (_hostInterfaces)
        {
            interfaces = [.. _hostInterfaces];
        }

        foreach (var hostInterface in interfaces)
        {
            await TryRunAsync(_ip, ["link", "del", hostInterface]).ConfigureAwait(false);
        }

        await TryRunAsync(_ip, ["netns", "del", NamespaceName]).ConfigureAwait(false);
        lock (RegistryGate)
        {
            LiveLabs.Remove(this);
        }
    }

    /// <summary>Runs <c>iptables</c> inside the namespace; throws when it fails.</summary>
    internal Task IptablesAsync(IReadOnlyList<string> arguments, CancellationToken cancellationToken) =>
        RunAsync(_ip, ["netns", "exec", NamespaceName, _iptables, "-w", "10", .. arguments], check: true, cancellationToken);

    private static string HostInterfaceName(string name, int index) => string.Create(CultureInfo.InvariantCulture, $"{name}h{index}");

    private static string NamespaceInterfaceName(string name, int index) => string.Create(CultureInfo.InvariantCulture, $"{name}n{index}");

    private async Task AddLinkAsync(int index, CancellationToken cancellationToken)
    {
        var hostInterface = HostInterfaceName(NamespaceName, index);
        var namespaceInterface = NamespaceInterfaceName(NamespaceName, index);
        var network = await ReserveSubnetAsync(cancellationToken).ConfigureAwait(false);
        var hostAddress = new IPAddress(ToBytes(network + 1)).ToString();
        var namespaceAddress = new IPAddress(ToBytes(network + 2)).ToString();

        lock (_hostInterfaces)
        {
            _hostInterfaces.Add(hostInterface);
        }

        await RunAsync(_ip, ["link", "add", hostInterface, "type", "veth", "peer", "name", namespaceInterface], check: true, cancellationToken).ConfigureAwait(false);
        await RunAsync(_ip, ["link", "set", namespaceInterface, "netns", NamespaceName], check: true, cancellationToken).ConfigureAwait(false);
        await RunAsync(_ip, ["addr", "add", hostAddress + "/30", "dev", hostInterface], check: true, cancellationToken).ConfigureAwait(false);
        await RunAsync(_ip, ["link", "set", hostInterface, "up"], check: true, cancellationToken).ConfigureAwait(false);
        await RunAsync(_ip, ["-n", NamespaceName, "addr", "add", namespaceAddress + "/30", "dev", namespaceInterface], check: true, cancellationToken).ConfigureAwait(false);
        await RunAsync(_ip, ["-n", NamespaceName, "link", "set", namespaceInterface, "up"], check: true, cancellationToken).ConfigureAwait(false);

        _links.Add(new NetworkLink(this, index, hostInterface, namespaceInterface, hostAddress, namespaceAddress, FormatSubnet(network)));
    }

    /// <summary>
    /// Picks a random free <c>/30</c> in <c>10.213.1.0</c> to <c>10.213.255.255</c>: reserves it with an
    /// <c>unreachable</c> route (adding a route that exists fails, so two labs cannot both get it), then
    /// checks that no address of the current namespace overlaps it.
    /// </summary>
    private async Task<uint> ReserveSubnetAsync(CancellationToken cancellationToken)
    {
        const int Attempts = 64;
        const uint Pool = (10u << 24) | (213u << 16);
        var lastFailure = string.Empty;
        for (var attempt = 0; attempt < Attempts; attempt++)
        {
            var network = Pool | ((uint)RandomNumberGenerator.GetInt32(1, 256) << 8) | ((uint)RandomNumberGenerator.GetInt32(0, 64) << 2);
            var subnet = FormatSubnet(network);
            var reserve = await RunAsync(_ip, ["route", "add", "unreachable", subnet, "metric", GuardRouteMetric], check: false, cancellationToken).ConfigureAwait(false);
            if (reserve.ExitCode != 0)
            {
                lastFailure = $"{reserve.CommandLine}: {reserve.Output.Trim()}";
                continue;
            }

            lock (RegistryGate)
            {
                GuardRoutes.Add(subnet);
            }

            var addresses = await RunAsync(_ip, ["-o", "-4", "addr", "show"], check: true, cancellationToken).ConfigureAwait(false);
            if (!OverlapsAnyAddress(addresses.Output, network))
            {
                return network;
            }

            lastFailure = $"{subnet} overlaps an address in use";
            await RemoveGuardRouteAsync(subnet).ConfigureAwait(false);
        }

        throw new InvalidOperationException($"No free /30 found in 10.213.0.0/16 after {Attempts} attempts; last: {lastFailure}");
    }

    private async Task RemoveGuardRouteAsync(string subnet)
    {
        await TryRunAsync(_ip, ["route", "del", "unreachable", subnet, "metric", GuardRouteMetric]).ConfigureAwait(false);
        lock (RegistryGate)
        {
            GuardRoutes.Remove(subnet);
        }
    }

    /// <summary>Whether any <c>inet a.b.c.d/len</c> in <c>ip -o -4 addr</c> output overlaps the /30 at <paramref name="network"/>.</summary>
    private static bool OverlapsAnyAddress(string ipAddrOutput, uint network)
    {
        foreach (var line in ipAddrOutput.Split('\n', StringSplitOptions.RemoveEmptyEntries))
        {
            var fields = line.Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries);
            var inet = Array.IndexOf(fields, "inet");
            if (inet < 0 || inet + 1 >= fields.Length)
            {
                continue;
            }

            var cidr = fields[inet + 1].Split('/');
            if (!IPAddress.TryParse(cidr[0], out var address) || address.AddressFamily != System.Net.Sockets.AddressFamily.InterNetwork)
            {
                continue;
            }

            var length = cidr.Length > 1 && int.TryParse(cidr[1], NumberStyles.None, CultureInfo.InvariantCulture, out var l) ? Math.Clamp(l, 0, 32) : 32;
            var shortest = Math.Min(length, 30);
            var mask = shortest == 0 ? 0u : uint.MaxValue << (32 - shortest);
            var bytes = address.GetAddressBytes();
            var value = ((uint)bytes[0] << 24) | ((uint)bytes[1] << 16) | ((uint)bytes[2] << 8) | bytes[3];
            if ((value & mask) == (network & mask))
            {
                return true;
            }
        }

        return false;
    }

    private static byte[] ToBytes(uint address) => [(byte)(address >> 24), (byte)(address >> 16), (byte)(address >> 8), (byte)address];

    private static string FormatSubnet(uint network) => new IPAddress(ToBytes(network)) + "/30";

    private async Task<ChildProcessResult> RunAsync(string program, IReadOnlyList<string> arguments, bool check, CancellationToken cancellationToken)
    {
        var result = await ChildProcess.RunAsync(program, arguments, null, CommandTimeout, cancellationToken).ConfigureAwait(false);
        if (check && result.ExitCode != 0)
        {
            throw new InvalidOperationException(
                $"Network lab {NamespaceName}: command failed with exit code {result.ExitCode}: {result.CommandLine}{Environment.NewLine}{ChildProcess.Tail(result.Output, 20)}");
        }

        return result;
    }

    private static async Task TryRunAsync(string program, IReadOnlyList<string> arguments)
    {
        try
        {
            await ChildProcess.RunAsync(program, arguments, null, CommandTimeout, CancellationToken.None).ConfigureAwait(false);
        }
        catch (InvalidOperationException)
        {
            // Best effort.
        }
    }

    private static void Register(NetworkLab lab)
    {
        lock (RegistryGate)
        {
            LiveLabs.Add(lab);
            if (s_processHandlersRegistered)
            {
                return;
            }

            s_processHandlersRegistered = true;
        }

        AppDomain.CurrentDomain.ProcessExit += (_, _) => CleanUpAtProcessExit();
        AppDomain.CurrentDomain.UnhandledException += (_, e) =>
        {
            // ProcessExit is not raised when an unhandled exception ends the process.
            if (e.IsTerminating)
            {
                CleanUpAtProcessExit();
            }
        };
    }

    /// <summary>Deletes the labs not disposed, then every guard route (links first, so nothing leaks meanwhile).</summary>
    private static void CleanUpAtProcessExit()
    {
        NetworkLab[] labs;
        string[] routes;
        lock (RegistryGate)
        {
            labs = [.. LiveLabs];
            LiveLabs.Clear();
            routes = [.. GuardRoutes];
            GuardRoutes.Clear();
        }

        var ip = SystemPrograms.Find("ip");
        if (ip is null)
        {
            return;
        }

        var timeout = TimeSpan.FromSeconds(10);
        foreach (var lab in labs)
        {
            if (Interlocked.Exchange(ref lab._disposed, 1) != 0)
            {
                continue;
            }

            string[] interfaces;
            lock (lab._hostInterfaces)
            {
                interfaces = [.. lab._hostInterfaces];
            }

            foreach (var hostInterface in interfaces)
            {
                ChildProcess.RunBlocking(ip, ["link", "del", hostInterface], null, timeout);
            }

            ChildProcess.RunBlocking(ip, ["netns", "del", lab.NamespaceName], null, timeout);
        }

        foreach (var subnet in routes)
        {
            ChildProcess.RunBlocking(ip, ["route", "del", "unreachable", subnet, "metric", GuardRouteMetric], null, timeout);
        }
    }
}

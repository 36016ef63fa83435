namespace HighlanderPG.TestKit.Network;

/// <summary>
/// One veth link of a <see cref="NetworkLab"/>: a <c>/30</c> with <see cref="HostAddress"/> in the current
/// network namespace (the client side) and <see cref="NamespaceAddress"/> in the lab's namespace (the
/// server side). It can be cut and healed. All members are thread-safe.
/// </summary>
public sealed class NetworkLink
{
    private readonly NetworkLab _lab;
    private readonly SemaphoreSlim _gate = new(1, 1);
    private volatile bool _partitioned;

    internal NetworkLink(
        NetworkLab lab, int index, string hostInterface, string namespaceInterface, string hostAddress, string namespaceAddress, string subnet)
    {
        _lab = lab;
        Index = index;
        HostInterface = hostInterface;
        NamespaceInterface = namespaceInterface;
        HostAddress = hostAddress;
        NamespaceAddress = namespaceAddress;
        Subnet = subnet;
    }

    /// <summary>The link's position in <see cref="NetworkLab.Links"/>.</summary>
    public int Index { get; }

    /// <summary>The name of the veth end in the current network namespace (for example <c>hl1a2b3c4dh0</c>).</summary>
    public string HostInterface { get; }

    /// <summary>The name of the veth end inside the lab's namespace (for example <c>hl1a2b3c4dn0</c>).</summary>
    public string NamespaceInterface { get; }

    /// <summary>
    /// The address of the current namespace's end (the first host of <see cref="Subnet"/>): the source
    /// address of connections from here to <see cref="NamespaceAddress"/>.
    /// </summary>
    public string HostAddress { get; }

    /// <summary>
    /// The address of the namespace's end (the second host of <see cref="Subnet"/>): a server in the
    /// namespace listens on it, clients here connect to it.
    /// </summary>
    public string NamespaceAddress { get; }

    /// <summary>The link's network in CIDR notation, for example <c>10.213.57.8/30</c>.</summary>
    public string Subnet { get; }

    /// <summary>Whether the link is cut, as far as this object knows.</summary>
    public bool IsPartitioned => _partitioned;

    /// <summary>
    /// Cuts the link: inside the namespace, <c>iptables -I INPUT -i {NamespaceInterface} -j DROP</c> and
    /// <c>iptables -I OUTPUT -o {NamespaceInterface} -j DROP</c>. Every packet both ways is silently dropped:
    /// open connections over the link hang (no reset, no close), new ones time out. Other links are not
    /// affected. Does nothing if the link is already cut.
    /// </summary>
    /// <param name="cancellationToken">Cancels the change; a half-made cut is then undone.</param>
    /// <returns>A task that completes when both rules are in place.</returns>
    /// <exception cref="ObjectDisposedException">The lab was disposed.</exception>
    /// <exception cref="InvalidOperationException"><c>iptables</c> failed (the message has its output).</exception>
    public async Task PartitionAsync(CancellationToken cancellationToken = default)
    {
        await _gate.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            ObjectDisposedException.ThrowIf(_lab.IsDisposed, _lab);
            if (_partitioned)
            {
                return;
            }

            await _lab.IptablesAsync(InputRule("-I"), cancellationToken).ConfigureAwait(false);
            try
            {
                await _lab.IptablesAsync(OutputRule("-I"), cancellationToken).ConfigureAwait(false);
            }
            catch
            {
                await _lab.IptablesAsync(InputRule("-D"), CancellationToken.None).ConfigureAwait(false);
                throw;
            }

            _partitioned = true;
        }
        finally
        {
            _gate.Release();
        }
    }

    /// <summary>
    /// Heals the link: deletes the two rules of <see cref="PartitionAsync(CancellationToken)"/>. Connections
    /// that survived the cut carry on (TCP retransmits what was dropped). Does nothing if the link is not cut
    /// or the lab was disposed.
    /// </summary>
    /// <param name="cancellationToken">Cancels the change.</param>
    /// <returns>A task that completes when both rules are gone.</returns>
    /// <exception cref="InvalidOperationException"><c>iptables</c> failed (the message has its output).</exception>
    public async Task HealAsync(CancellationToken cancellationToken = default)
    {
        await _gate.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            if (!_partitioned || _lab.IsDisposed)
            {
                return;
            }

            await _lab.IptablesAsync(InputRule("-D"), cancellationToken).ConfigureAwait(false);
            await _lab.IptablesAsync(OutputRule("-D"), cancellationToken).ConfigureAwait(false);
            _partitioned = false;
        }
        finally
        {
            _gate.Release();
        }
    }

    /// <summary>Describes the link, for test output.</summary>
    /// <returns>For example <c>link 0: 10.213.57.9 (hl1a2b3c4dh0) &lt;-&gt; 10.213.57.10 (hl1a2b3c4dn0)</c>.</returns>
    public override string ToString() =>
        $"link {Index}: {HostAddress} ({HostInterface}) <-> {NamespaceAddress} ({NamespaceInterface}){(_partitioned ? " [partitioned]" : "")}";

    private string[] InputRule(string action) => [action, "INPUT", "-i", NamespaceInterface, "-j", "DROP"];

    private string[] OutputRule(string action) => [action, "OUTPUT", "-o", NamespaceInterface, "-j", "DROP"];
}

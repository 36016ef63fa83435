using HighlanderPG.Tests.Infrastructure;

namespace HighlanderPG.Tests.Leasing;

[Collection(SharedServer.Name)]
public sealed class SingletonKeyTests(PostgresFixture pg)
{
    [Fact]
    public void Keys_are_stable_and_depend_on_namespace_and_name()
    {
        Assert.Equal(SingletonKey.Derive("highlander", "reports"), SingletonKey.Derive("highlander", "reports"));
        Assert.NotEqual(SingletonKey.Derive("highlander", "reports"), SingletonKey.Derive("other", "reports"));
        Assert.NotEqual(SingletonKey.Derive("highlander", "reports"), SingletonKey.Derive("highlander", "report"));

        // The separator keeps ("ab", "c") and ("a", "bc") apart.
        Assert.NotEqual(SingletonKey.Derive("ab", "c"), SingletonKey.Derive("a", "bc"));
    }

    [Theory]
    [InlineData("highlander", "reports")]
    [InlineData("highlander", "OutboxRelay")]
    [InlineData("ns", "名前 with ünïcode")]
    public async Task The_documented_SQL_computes_the_same_key(string ns, string name)
    {
        var fromSql = await Db.ScalarAsync<long>(
            pg.ConnectionString,
            "SELECT ('x' || left(encode(sha256(convert_to($1, 'UTF8') || '\\x00'::bytea || convert_to($2, 'UTF8')), 'hex'), 16))::bit(64)::bigint",
            ns,
            name);
        Assert.Equal(SingletonKey.Derive(ns, name), fromSql);
    }
}

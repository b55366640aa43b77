#!/usr/bin/perl
# Writes a small MaxMind-format database for the tests, with Debian's MaxMind::DB::Writer
# (libmaxmind-db-writer-perl): the layout of GeoLite2-ASN or GeoLite2-Country, never a download.
#
#   perl mmdb.pl OUT asn     PREFIX=ASN[:ORGANISATION] ...
#   perl mmdb.pl OUT country PREFIX=ISO_CODE ...
use strict;
use warnings;
use MaxMind::DB::Writer::Tree;

my ($out, $kind, @rows) = @ARGV;
die "usage: mmdb.pl OUT asn|country PREFIX=VALUE...\n" unless $out && $kind && @rows;
my %types = (
    autonomous_system_number       => 'uint32',
    autonomous_system_organization => 'utf8_string',
    country                        => 'map',
    iso_code                       => 'utf8_string',
);
my $tree = MaxMind::DB::Writer::Tree->new(
    ip_version               => 6,
    record_size              => 24,
    database_type            => $kind eq 'asn' ? 'GeoLite2-ASN' : 'GeoLite2-Country',
    languages                => ['en'],
    description              => { en => 'pixelrelay test database' },
    # The tests use documentation ranges (RFC 5737, RFC 3849), which the writer drops by default.
    remove_reserved_networks => 0,
    map_key_type_callback    => sub { $types{ $_[0] } },
);
for my $row (@rows) {
    my ($prefix, $value) = split /=/, $row, 2;
    my $data;
    if ($kind eq 'asn') {
        my ($asn, $org) = split /:/, $value, 2;
        $data = { autonomous_system_number => $asn + 0 };
        $data->{autonomous_system_organization} = $org if defined $org;
    } else {
        $data = { country => { iso_code => $value } };
    }
    $tree->insert_network($prefix, $data);
}
open my $fh, '>:raw', $out or die "$out: $!\n";
$tree->write_tree($fh);
close $fh or die "$out: $!\n";

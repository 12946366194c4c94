<?php
/*
 * Runs examples/wordpress-plugin/kalkan-purge.php under PHP's CLI with stand-ins for the few
 * WordPress functions it calls, and fires one editor action at it. The HTTP call is real
 * (wp_remote_post here is PHP's own HTTP client), so the plugin talks to a real Kalkan admin API.
 *
 * php wordpress_plugin_harness.php PLUGIN ACTION   (ACTION: update | draft | slug | comment)
 * Environment: KALKAN_ADMIN_URL, KALKAN_ADMIN_TOKEN (empty: not defined). Prints the URLs
 * purged and the answers, as JSON.
 */

define( 'ABSPATH', __DIR__ . '/' );
define( 'SITE', 'http://news.example' );
if ( getenv( 'KALKAN_ADMIN_TOKEN' ) !== '' ) {
	define( 'KALKAN_ADMIN_TOKEN', getenv( 'KALKAN_ADMIN_TOKEN' ) );
}
define( 'KALKAN_ADMIN_URL', getenv( 'KALKAN_ADMIN_URL' ) );

$GLOBALS['hooks'] = array();
$GLOBALS['calls'] = array();
$GLOBALS['slug']  = '/2020/12/statement/';

class WP_Error {
	private $message;
	public function __construct( $code, $message ) { $this->message = $message; }
	public function get_error_message() { return $this->message; }
}

function add_action( $hook, $callback, $priority = 10, $args = 1 ) {
	$GLOBALS['hooks'][ $hook ][] = array( $callback, $args );
}
function do_action( $hook, ...$args ) {
	foreach ( $GLOBALS['hooks'][ $hook ] ?? array() as list( $callback, $count ) ) {
		$callback( ...array_slice( $args, 0, $count ) );
	}
}
function get_post( $id ) {
	return (object) array( 'ID' => 1, 'post_type' => 'post', 'post_status' => 'publish',
		'post_author' => 2 );
}
function get_post_status( $id ) { return 'publish'; }
function get_permalink( $post ) { return SITE . $GLOBALS['slug']; }
function home_url( $path = '' ) { return SITE . $path; }
function get_feed_link() { return SITE . '/feed/'; }
function get_post_comments_feed_link( $id ) { return SITE . $GLOBALS['slug'] . 'feed/'; }
function get_the_terms( $post, $taxonomy ) {
	return 'category' === $taxonomy ? array( (object) array( 'slug' => 'politics' ) ) : false;
}
function get_term_link( $term ) { return SITE . '/category/' . $term->slug . '/'; }
function get_author_posts_url( $id ) { return SITE . '/author/aida/'; }
function wp_is_post_revision( $post ) { return false; }
function wp_is_post_autosave( $post ) { return false; }
function is_post_type_viewable( $type ) { return 'post' === $type; }
function set_url_scheme( $url, $scheme ) { return preg_replace( '#^\w+://#', $scheme . '://', $url ); }
function is_wp_error( $thing ) { return $thing instanceof WP_Error; }
function wp_remote_retrieve_response_code( $r ) { return $r['code']; }
function wp_remote_retrieve_body( $r ) { return $r['body']; }
function wp_remote_post( $url, $args ) {
	$headers = '';
	foreach ( $args['headers'] as $name => $value ) {
		$headers .= "$name: $value\r\n";
	}
	$context = stream_context_create( array( 'http' => array( 'method' => 'POST',
		'header' => $headers, 'content' => '', 'timeout' => $args['timeout'],
		'ignore_errors' => true ) ) );
	$body = @file_get_contents( $url, false, $context );
	if ( false === $body ) {
		$GLOBALS['calls'][] = array( 'url' => $url, 'error' => true );
		return new WP_Error( 'http_request_failed', 'could not connect to ' . $url );
	}
	preg_match( '#^HTTP/\S+ (\d+)#', $http_response_header[0], $m );
	$GLOBALS['calls'][] = array( 'url' => $url, 'code' => (int) $m[1], 'body' => $body );
	return array( 'code' => (int) $m[1], 'body' => $body );
}

require $argv[1];

$post = get_post( 1 );
switch ( $argv[2] ) {
	case 'update':   // an editor fixes a typo in a published post
		do_action( 'pre_post_update', 1, array() );
		do_action( 'transition_post_status', 'publish', 'publish', $post );
		break;
	case 'draft':    // a draft saved as a draft
		$post->post_status = 'draft';
		do_action( 'transition_post_status', 'draft', 'draft', $post );
		break;
	case 'slug':     // the published post's slug is changed
		do_action( 'pre_post_update', 1, array() );
		$GLOBALS['slug'] = '/2020/12/statement-updated/';
		do_action( 'transition_post_status', 'publish', 'publish', $post );
		break;
	case 'comment':  // a comment is approved
		do_action( 'wp_update_comment_count', 1, 1, 0 );
		break;
}
echo json_encode( $GLOBALS['calls'] ), "\n";

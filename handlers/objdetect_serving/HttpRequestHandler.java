/*
 * TorchServe 0.12.0's org.pytorch.serve.http.HttpRequestHandler (Apache License 2.0, Copyright
 * the TorchServe authors), with the request checks objdetect adds before any handler reads the
 * body. `python -m objdetect_serving.frontend install` compiles it into model-server.jar in place
 * of the original; TorchServe is archived, so this is where its frontend gets fixed.
 *
 * What differs from the original, and why:
 * - A body labelled application/x-www-form-urlencoded goes on as a plain body. The API takes no
 *   such forms, `curl --data-binary @photo.jpg` labels an image that way, and TorchServe's form
 *   decoder is what a 20 MiB `a&a&...` body used to exhaust the heap with.
 * - multipart/form-data without a boundary (RFC 2046: 1 to 70 characters) is a 400 here; Netty's
 *   decoder answered it with a StringIndexOutOfBoundsException, a 500.
 * - A form Netty cannot decode (malformed, too many fields, a field too long) is a 400 that names
 *   the problem; the original answered 500 with Netty's message, which quoted the body.
 * - /ping on the inference API (the load balancer's health check) is a JSON 503 until the server
 *   serves what it was started for, and again once it drains (readiness, below). The original
 *   says Healthy while workers still load, and with no model registered at all.
 */
package org.pytorch.serve.http;

import io.netty.channel.ChannelHandlerContext;
import io.netty.channel.SimpleChannelInboundHandler;
import io.netty.handler.codec.DecoderException;
import io.netty.handler.codec.http.FullHttpRequest;
import io.netty.handler.codec.http.HttpHeaderNames;
import io.netty.handler.codec.http.HttpHeaderValues;
import io.netty.handler.codec.http.HttpResponseStatus;
import io.netty.handler.codec.http.HttpUtil;
import io.netty.handler.codec.http.QueryStringDecoder;
import java.io.File;
import java.util.LinkedHashMap;
import java.util.Map;
import org.pytorch.serve.archive.DownloadArchiveException;
import org.pytorch.serve.archive.model.ModelException;
import org.pytorch.serve.archive.model.ModelNotFoundException;
import org.pytorch.serve.archive.model.ModelVersionNotFoundException;
import org.pytorch.serve.archive.workflow.WorkflowNotFoundException;
import org.pytorch.serve.http.api.rest.InferenceRequestHandler;
import org.pytorch.serve.util.NettyUtils;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

public class HttpRequestHandler extends SimpleChannelInboundHandler<FullHttpRequest> {

    private static final Logger logger = LoggerFactory.getLogger(HttpRequestHandler.class);
    /*
     * Readiness: the marker files of objdetect_serving/torchserve.py, whose paths its launch puts
     * in these variables. The serving marker is written once every model the server was started
     * for is registered, each with a READY worker, and every default is set; the drain marker
     * once SIGTERM's drain begins. Unset (a TorchServe started some other way): TorchServe's
     * own /ping. Set: /ping is 503 unless the one exists and the other does not, then
     * TorchServe answers it. One stat per file per ping, on the event loop: cheap.
     * No READY-worker check of its own: the serving marker already means one was READY, and a
     * worker that dies later is TorchServe's to restart; its own answer, which comes once the
     * markers allow, turns Unhealthy when a default's worker stays down past its retry time.
     */
    private static final String SERVING_MARKER = System.getenv("OBJDETECT_SERVING_MARKER");
    private static final String DRAIN_MARKER = System.getenv("OBJDETECT_DRAIN_MARKER");
    private HttpRequestHandlerChain handlerChain;
    private boolean inferenceApi; // where TorchServe answers /ping: not management, not metrics

    public HttpRequestHandler() {}

    public HttpRequestHandler(HttpRequestHandlerChain chain) {
        handlerChain = chain;
        for (HttpRequestHandlerChain next = chain; next != null; next = next.chain) {
            inferenceApi |= next instanceof InferenceRequestHandler;
        }
    }

    @Override
    protected void channelRead0(ChannelHandlerContext ctx, FullHttpRequest req) {
        try {
            NettyUtils.requestReceived(ctx.channel(), req);
            if (!req.decoderResult().isSuccess()) {
                throw new BadRequestException("Invalid HTTP message.");
            }
            checkBody(req);
            QueryStringDecoder decoder = new QueryStringDecoder(req.uri());
            String path = decoder.path();

            String[] segments = path.split("/");
            // TorchServe's own test for /ping (InferenceRequestHandler.isInferenceReq).
            String unready =
                    inferenceApi && segments.length >= 2 && "ping".equals(segments[1])
                            ? unready()
                            : null;
            if (unready != null) {
                Map<String, String> status = new LinkedHashMap<>();
                status.put("status", "Unhealthy");
                status.put("reason", unready);
                NettyUtils.sendJsonResponse(ctx, status, HttpResponseStatus.SERVICE_UNAVAILABLE);
                return;
            }
            handlerChain.handleRequest(ctx, req, decoder, segments);
        } catch (ResourceNotFoundException
                | ModelNotFoundException
                | ModelVersionNotFoundException
                | WorkflowNotFoundException e) {
            logger.trace("", e);
            NettyUtils.sendError(ctx, HttpResponseStatus.NOT_FOUND, e);
        } catch (BadRequestException | ModelException | DownloadArchiveException e) {
            logger.trace("", e);
            NettyUtils.sendError(ctx, HttpResponseStatus.BAD_REQUEST, e);
        } catch (DecoderException e) {
            logger.debug("a form that cannot be decoded", e);
            NettyUtils.sendError(
                    ctx,
                    HttpResponseStatus.BAD_REQUEST,
                    new BadRequestException(
                            "the multipart form cannot be read ("
                                    + e.getClass().getSimpleName()
                                    + "): send the image in one file field, options as fields, "
                                    + "e.g. curl -F data=@photo.jpg"));
        } catch (ConflictStatusException e) {
            logger.trace("", e);
            NettyUtils.sendError(ctx, HttpResponseStatus.CONFLICT, e);
        } catch (RequestTimeoutException e) {
            logger.trace("", e);
            NettyUtils.sendError(ctx, HttpResponseStatus.REQUEST_TIMEOUT, e);
        } catch (MethodNotAllowedException e) {
            logger.trace("", e);
            NettyUtils.sendError(ctx, HttpResponseStatus.METHOD_NOT_ALLOWED, e);
        } catch (ServiceUnavailableException e) {
            logger.trace("", e);
            NettyUtils.sendError(ctx, HttpResponseStatus.SERVICE_UNAVAILABLE, e);
        } catch (OutOfMemoryError e) {
            logger.trace("", e);
            NettyUtils.sendError(ctx, HttpResponseStatus.INSUFFICIENT_STORAGE, e);
        } catch (IllegalArgumentException e) {
            logger.error("", e);
            NettyUtils.sendError(ctx, HttpResponseStatus.FORBIDDEN, e);
        } catch (Throwable t) {
            logger.error("", t);
            NettyUtils.sendError(ctx, HttpResponseStatus.INTERNAL_SERVER_ERROR, t);
        }
    }

    /** Why /ping must answer 503 (readiness, above), or null to let TorchServe answer it. */
    private static String unready() {
        if (SERVING_MARKER == null) {
            return null;
        }
        if (DRAIN_MARKER != null && new File(DRAIN_MARKER).exists()) {
            return "draining: shutting down after SIGTERM";
        }
        if (!new File(SERVING_MARKER).exists()) {
            return "starting: not every model of the server is registered and READY yet";
        }
        return null;
    }

    /** The body checks above, before TorchServe's handlers decode anything. */
    private static void checkBody(FullHttpRequest req) throws BadRequestException {
        CharSequence mimeType = HttpUtil.getMimeType(req);
        if (mimeType == null) {
            return;
        }
        if (HttpHeaderValues.APPLICATION_X_WWW_FORM_URLENCODED.contentEqualsIgnoreCase(mimeType)) {
            req.headers().set(HttpHeaderNames.CONTENT_TYPE, HttpHeaderValues.APPLICATION_OCTET_STREAM);
        } else if (HttpHeaderValues.MULTIPART_FORM_DATA.contentEqualsIgnoreCase(mimeType)) {
            String boundary = boundary(req.headers().get(HttpHeaderNames.CONTENT_TYPE));
            if (boundary.isEmpty() || boundary.length() > 70) {
                throw new BadRequestException(
                        "multipart/form-data needs a boundary of 1 to 70 characters in its "
                                + "Content-Type (curl -F sets one)");
            }
        }
    }

    /** The boundary parameter of a Content-Type header, unquoted; empty when there is none. */
    private static String boundary(String contentType) {
        for (String parameter : contentType.split(";")) {
            String[] nameValue = parameter.trim().split("=", 2);
            if (nameValue.length == 2 && nameValue[0].trim().equalsIgnoreCase("boundary")) {
                String value = nameValue[1].trim();
                boolean quoted = value.length() >= 2 && value.startsWith("\"") && value.endsWith("\"");
                return quoted ? value.substring(1, value.length() - 1) : value;
            }
        }
        return "";
    }

    @Override
    public void exceptionCaught(ChannelHandlerContext ctx, Throwable cause) {
        logger.error("", cause);
        if (cause instanceof OutOfMemoryError) {
            NettyUtils.sendError(ctx, HttpResponseStatus.INSUFFICIENT_STORAGE, cause);
        }
        ctx.close();
    }
}
